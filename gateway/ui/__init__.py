"""The session trail web page: static HTML/JS/CSS that reads the REST API with the caller's key."""
