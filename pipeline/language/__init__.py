"""Stage 3, medical language: vocabulary, normalisation (commands, numbers, terms,
abbreviations) and the instructions lifted out of the dictation.
"""
