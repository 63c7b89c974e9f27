"""Units defined outside oner_lab, as a user's own package would: each module is named in a spec's
`base.plugins` and registers one unit (tests/test_plugins.py; "Add one" in docs/)."""
