"""Transparency pages generated from the field registry, the role config and the database.

`trustlog policy render` (the one-page policy), `trustlog report finance | team | sample`.
Everything a page says about fields, roles and retention is read from
``schemas/fields.yaml`` and ``config/roles.yaml`` when it is rendered, so the page cannot
drift from what the system does; every number comes from ClickHouse, read as the role account
the report is for, so the database decides what the report may contain.
"""
