//! The compile cache: compiled components on disk, keyed by the sha256 of
//! the plugin file and the engine's compatibility hash, so a restart (or a
//! reload of an unchanged file) loads them without compiling.
//!
//! wasmtime's own `cache` feature was measured against this one and loads
//! the same components several times slower with several times the memory
//! (it decompresses and copies what this maps); the figures and the
//! command are in the README ("Compile cache").

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::CompileSource;

/// Compiled components on disk.
#[derive(Debug)]
pub(super) struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir` (created on first write).
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Its folder.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component for `bytes` (whose sha256 is `sha256`): from the cache
    /// when an entry for this content and engine exists, else compiled and
    /// stored. Cache problems are logged and never fail a load.
    pub(super) fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CompileSource)> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let file = self.dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if file.exists() {
            // SAFETY: wasmtime requires that the file was produced by
            // `Component::serialize` with a compatible engine and not
            // tampered with. This host writes the cache directory itself
            // (atomically, via rename), the name binds the source hash and
            // the engine's compatibility hash, and wasmtime re-checks the
            // engine settings in the file's header. Operators must keep the
            // directory as private as the plugins themselves.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(engine, &file) } {
                Ok(c) => return Ok((c, CompileSource::Cached)),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %format!("{e:#}"), "compile cache entry unusable; compiling again")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        let store = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, component.serialize().map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &file)
        };
        if let Err(e) = store() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache; loads will compile");
        }
        Ok((component, CompileSource::Compiled))
    }
}
