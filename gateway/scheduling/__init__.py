"""Deployments' cron schedules: parsing, next and latest fire times, and the loop that fires them."""
