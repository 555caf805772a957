//! Declares `cfg(fuzzing)` (set by cargo-fuzz) so that checksum bypasses compile without warnings.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
