"""Test helpers that users can run too: local emulators of the remote training platforms.

Part of the domain library: it never imports Prefect.
"""
