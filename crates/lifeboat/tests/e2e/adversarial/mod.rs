//! Adversarial reproductions: every way a review found to lose data, write outside a restore
//! target, or mislead an operator, each kept as a test so that the next review starts from them
//! (see ../shared/guide/ADVERSARIAL.md for the classes tried). One module per area.

mod archive;
mod config;
mod manifest;
mod restore;
mod verify;
