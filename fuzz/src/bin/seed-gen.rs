//! Writes the generated seeds (`x0x_fuzz::seed_files`: one sample of every
//! message kind for `decode` and `frame`, streams of them, relay and vouch
//! packets) under `fuzz/seeds/` (or the directory given), replacing the
//! `sample-*` files there. Hand-made seeds are left alone.
//!
//! Usage: `scripts/fuzz.sh gen` (`cargo run --features gen --bin seed-gen`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let files = x0x_fuzz::seed_files();
    for dir in ["decode", "frame", "relay"] {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sample-"))
            {
                std::fs::remove_file(path)?;
            }
        }
    }
    for (rel, bytes) in &files {
        std::fs::write(out.join(rel), bytes)?;
    }
    println!("{} seed files written under {}", files.len(), out.display());
    Ok(())
}
