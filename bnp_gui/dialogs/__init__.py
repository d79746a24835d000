"""One dialog per action: data roles, trigger, input settings, export, trust, architecture."""
