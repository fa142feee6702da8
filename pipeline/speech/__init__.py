"""Stage 2, speech: the Whisper models and the guarded transcribe stage.
"""
