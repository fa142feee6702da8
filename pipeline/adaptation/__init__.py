"""Speech-model adaptation: each physician's model learns that physician's voice from the
practice's own signed dictations (issue #15).

The loop, one module a step:

- ``convert``: the shipped CTranslate2 Whisper models rebuilt as PyTorch models (the
  CTranslate2 converter's name mapping run backwards) and trained models written back to a
  CTranslate2 folder. Needs the optional ``[train]`` extra (torch).
- ``pairs``: (audio window, target text) training pairs cut from signed drafts at word
  timestamps, with the reviewers' corrections carried over; drafts and windows too far from
  their audio are skipped with a recorded reason.
- ``train``: fine-tuning on one physician's pairs (CPU by default, CUDA when present).
- ``gate``: a candidate is promoted only if it beats the current model on that physician's
  held-back signed dictations and keeps general English.
- ``versions``: each physician's model versions, their figures, promotion and rollback; the
  worker asks it which model decodes a physician's dictation.

Pairs, checkpoints and adapted models live under ``<data_dir>/adaptation/<physician>/``, are
encrypted like every other patient file, never leave the machine, and no log line carries
their text.
"""
