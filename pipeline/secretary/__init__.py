"""Stage 6, the secretary's day: schedule, tasks, referrals and routing of signed
documents.
"""
