"""Tests of the GPU, system and cost monitors."""
