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
        let trusted = file.exists()
            && {
                match private(&self.dir).and_then(|()| private(&file)) {
                    Ok(()) => true,
                    Err(why) => {
                        tracing::warn!(file = %file.display(), why, "compile cache entry not trusted as native code; compiling instead");
                        false
                    }
                }
            };
        if trusted {
            // SAFETY: wasmtime requires that the file was produced by
            // `Component::serialize` with a compatible engine and not
            // tampered with. This host writes the cache directory itself
            // (atomically, via rename, mode 0700 and 0600), the name binds
            // the source's sha256 (the hash a pin checks) and the engine's
            // compatibility hash, wasmtime re-checks the engine settings in
            // the file's header, and `private` refused the entry unless this
            // user owns it and its folder and nobody else can write them.
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
            use std::io::Write as _;
            use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(&component.serialize().map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &file)
        };
        if let Err(e) = store() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache; loads will compile");
        }
        Ok((component, CompileSource::Compiled))
    }
}

/// `Ok` when `path` belongs to this process's user and nobody else may
/// write it (no group or other write bit): only then is a compiled
/// artifact in it trusted as native code. Else why not.
fn private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // The owner of /proc/self is the process's user (Linux).
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("cannot tell this process's user: {e}"))?;
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to user {}, not to this process's user {me}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}); chmod go-w it",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_entries_are_trusted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.cwasm");
        std::fs::write(&file, b"x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(private(&file), Ok(()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let why = private(&file).expect_err("world-writable");
        assert!(why.contains("writable by group or others"), "{why}");
    }
}
