//! Exporters: each reads a `Profile` and writes one format.

pub mod flamegraph;
pub mod folded;
pub mod summary;

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use crate::aggregate::Profile;

/// A report format, named by the output file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Folded,
    Svg,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The extension names no format we write.
    #[error("{}: unknown output extension (use .folded or .svg)", .0.display())]
    UnknownExtension(PathBuf),
    /// The file cannot be created.
    #[error("{}: cannot write", .path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self, OutputError> {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("folded") => Ok(Format::Folded),
            Some("svg") => Ok(Format::Svg),
            _ => Err(OutputError::UnknownExtension(path.to_path_buf())),
        }
    }
}

/// An output file, created before tracing starts so a bad path fails at once.
pub struct Output {
    pub path: PathBuf,
    pub format: Format,
    file: File,
}

impl Output {
    pub fn create(path: &Path) -> Result<Self, OutputError> {
        let format = Format::from_path(path)?;
        let file = File::create(path).map_err(|source| OutputError::Unwritable {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { path: path.to_path_buf(), format, file })
    }

    pub fn write(self, profile: &Profile) -> anyhow::Result<()> {
        let Output { path, format, file } = self;
        let mut out = BufWriter::new(file);
        match format {
            Format::Folded => folded::write_folded(profile, &mut out)?,
            Format::Svg => flamegraph::write_flamegraph(profile, &mut out)?,
        }
        out.flush()
            .map_err(|source| OutputError::Unwritable { path, source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(Format::from_path(Path::new("a/waits.svg")).unwrap(), Format::Svg);
        assert_eq!(Format::from_path(Path::new("waits.folded")).unwrap(), Format::Folded);
        let err = Format::from_path(Path::new("waits.xyz")).unwrap_err();
        assert_eq!(err.to_string(), "waits.xyz: unknown output extension (use .folded or .svg)");
    }
}
