//! Adversarial tests: restore.
