"""Signed webhook deliveries of session status changes (Standard Webhooks format)."""
