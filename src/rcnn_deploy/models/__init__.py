"""Deploy-form model definitions (torch)."""
