//! Adversarial tests: archive.
