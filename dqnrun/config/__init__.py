"""Config layer: composing, key spellings, validation rules and the preflight. Imports nothing heavy."""
