//! Adversarial tests: verify.
