"""Event-triggered retrains, the webhook relay and notifications."""
