//! Adversarial tests: config.
