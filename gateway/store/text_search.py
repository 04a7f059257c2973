"""Free-text search in resource lists (the sessions' ``q``), as SQL for both backends.

A match is a case-insensitive substring of the id, the ``title`` or any ``metadata`` value;
LIKE's wildcards in the searched text are taken literally (escaped with a backslash).
"""

from __future__ import annotations

SQLITE_MATCH = (
    "(id LIKE ? ESCAPE '\\' OR json_extract(body, '$.title') LIKE ? ESCAPE '\\' OR EXISTS "
    "(SELECT 1 FROM json_each(body, '$.metadata') WHERE value LIKE ? ESCAPE '\\'))"
)
"""Takes ``like_pattern(text)`` three times. SQLite's LIKE ignores case for ASCII letters."""


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def postgres_match(pattern: str) -> str:
    """``pattern`` is the placeholder holding ``like_pattern(text)`` (ILIKE escapes with a
    backslash by default); metadata that is not an object matches nothing."""
    return (
        f"(id ILIKE {pattern} OR body ->> 'title' ILIKE {pattern} OR EXISTS (SELECT 1 FROM "
        "jsonb_each_text(CASE WHEN jsonb_typeof(body -> 'metadata') = 'object' "
        f"THEN body -> 'metadata' ELSE '{{}}'::jsonb END) AS m WHERE m.value ILIKE {pattern}))"
    )
