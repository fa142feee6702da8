"""Developer tools, not stages: benchmarks, evaluation on the sample sets, sample
generation and the vocabulary build.
"""
