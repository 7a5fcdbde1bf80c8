"""What a sweep keeps: its journal (the source of truth on resume), its marker, and its MLflow
layout (the batched writer and the reader); the only subpackage that imports MLflow."""
