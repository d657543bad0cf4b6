//! External data: initializers whose bytes live in a file beside the model (the `location`, `offset` and
//! `length` keys of `TensorProto.external_data`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use onnx_protobuf::{tensor_proto::DataLocation, TensorProto};

use crate::GraphError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExternalRef {
    pub location: String,
    pub offset: u64,
    /// `None` means "to the end of the file".
    pub length: Option<u64>,
}

pub(crate) fn parse_ref(model: &Path, tensor: &TensorProto) -> Result<Option<ExternalRef>, GraphError> {
    if tensor.data_location.value() != DataLocation::EXTERNAL as i32 {
        return Ok(None);
    }
    let malformed = |message: String| GraphError::ExternalMalformed {
        model: model.to_path_buf(),
        tensor: tensor.name.clone(),
        message,
    };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for entry in &tensor.external_data {
        match entry.key.as_str() {
            "location" => location = Some(entry.value.clone()),
            "offset" => {
                offset =
                    entry.value.parse().map_err(|_| malformed(format!("offset '{}' is not a number", entry.value)))?
            }
            "length" => {
                length = Some(
                    entry.value.parse().map_err(|_| malformed(format!("length '{}' is not a number", entry.value)))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| malformed("no 'location' key".into()))?;
    Ok(Some(ExternalRef { location, offset, length }))
}

/// Refuses locations that are absolute or climb out of the model's folder, before anything is read.
pub(crate) fn check_inside(
    model: &Path,
    dir: &Path,
    tensor: &TensorProto,
    ext: &ExternalRef,
) -> Result<(), GraphError> {
    let outside = || GraphError::ExternalOutsideFolder {
        model: model.to_path_buf(),
        tensor: tensor.name.clone(),
        location: ext.location.clone(),
    };
    let rel = Path::new(&ext.location);
    if ext.location.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(outside());
    }
    // A symbolic link could still point elsewhere: compare resolved paths.
    let file = dir.join(rel);
    let real_dir = dir.canonicalize().map_err(|source| GraphError::Read { path: dir.to_path_buf(), source })?;
    let real_file = file.canonicalize().map_err(|source| GraphError::Read { path: file.clone(), source })?;
    if !real_file.starts_with(&real_dir) {
        return Err(outside());
    }
    Ok(())
}

pub(crate) fn check_bounds(
    model: &Path,
    dir: &Path,
    tensor: &TensorProto,
    ext: &ExternalRef,
) -> Result<(), GraphError> {
    let file = dir.join(&ext.location);
    let file_len = file.metadata().map_err(|source| GraphError::Read { path: file.clone(), source })?.len();
    let end = match ext.length {
        Some(len) => ext.offset.saturating_add(len),
        None => file_len,
    };
    if ext.offset > file_len || end > file_len {
        return Err(GraphError::ExternalOutOfBounds {
            model: model.to_path_buf(),
            tensor: tensor.name.clone(),
            file,
            offset: ext.offset,
            end,
            file_len,
        });
    }
    Ok(())
}

pub(crate) fn read(model: &Path, dir: &Path, tensor: &TensorProto, ext: &ExternalRef) -> Result<Vec<u8>, GraphError> {
    check_inside(model, dir, tensor, ext)?;
    check_bounds(model, dir, tensor, ext)?;
    let path = dir.join(&ext.location);
    let io = |source| GraphError::Read { path: path.clone(), source };
    let mut file = safe_io::open(&path, u64::MAX, "external data")?;
    let file_len = file.metadata().map_err(io)?.len();
    let len = ext.length.unwrap_or(file_len - ext.offset);
    file.seek(SeekFrom::Start(ext.offset)).map_err(io)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::StringStringEntryProto;

    fn external_tensor(location: &str, offset: u64, length: u64) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.data_location = DataLocation::EXTERNAL.into();
        for (k, v) in
            [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())]
        {
            let mut e = StringStringEntryProto::new();
            e.key = k.into();
            e.value = v;
            t.external_data.push(e);
        }
        t
    }

    #[test]
    fn refuses_locations_outside_the_model_folder() {
        let root = tempfile::tempdir().unwrap();
        let model_dir = root.path().join("m");
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::write(root.path().join("secret.bin"), [0u8; 8]).unwrap();
        let model = model_dir.join("x.onnx");
        for loc in ["../secret.bin", "/etc/passwd", ""] {
            let t = external_tensor(loc, 0, 4);
            let ext = parse_ref(&model, &t).unwrap().unwrap();
            let err = check_inside(&model, &model_dir, &t, &ext).unwrap_err();
            assert!(matches!(err, GraphError::ExternalOutsideFolder { .. }), "{loc}: {err}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.path().join("secret.bin"), model_dir.join("link.bin")).unwrap();
            let t = external_tensor("link.bin", 0, 4);
            let ext = parse_ref(&model, &t).unwrap().unwrap();
            assert!(matches!(
                check_inside(&model, &model_dir, &t, &ext),
                Err(GraphError::ExternalOutsideFolder { .. })
            ));
        }
    }

    #[test]
    fn reads_the_requested_slice_and_rejects_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [1u8, 2, 3, 4, 5, 6]).unwrap();
        let model = dir.path().join("x.onnx");
        let t = external_tensor("w.bin", 2, 3);
        let ext = parse_ref(&model, &t).unwrap().unwrap();
        assert_eq!(read(&model, dir.path(), &t, &ext).unwrap(), vec![3, 4, 5]);
        let t = external_tensor("w.bin", 4, 8);
        let ext = parse_ref(&model, &t).unwrap().unwrap();
        assert!(matches!(read(&model, dir.path(), &t, &ext), Err(GraphError::ExternalOutOfBounds { .. })));
    }
}
