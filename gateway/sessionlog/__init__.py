"""The session log's vocabulary: the events Tether writes and the state a log implies.

Pure functions of events, below the harness, the API and the resources, so each of them can
read a log the same way without importing one another.
"""
