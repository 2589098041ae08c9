"""Parent flows (deployment entrypoints) and the CLI that launches them."""
