//! Writing an edited model so that it loads from wherever it is written.

use std::io::Write;
use std::path::Path;

use onnx_protobuf::{tensor_proto::DataLocation, Message, ModelProto, StringStringEntryProto};

use crate::{GraphError, Model};

/// Above this many bytes of initializer data, protobuf's 2 GiB message limit is near: tensors go to an
/// external data file instead.
const INLINE_LIMIT: u64 = 1 << 30;
/// Tensors smaller than this stay inline even when the rest goes external.
const EXTERNAL_MIN: usize = 1024;

/// Writes `proto` (an edit of `source`'s graph) to `out`. Initializers that `source` kept in external files
/// are read from there; everything is inlined when it fits, else large tensors go to `<out>.data` beside it.
/// Both files are written through temporary files and renames.
pub fn save_model(source: &Model, proto: ModelProto, out: &Path) -> Result<(), GraphError> {
    save_model_with_limit(source, proto, out, INLINE_LIMIT)
}

fn save_model_with_limit(
    source: &Model,
    mut proto: ModelProto,
    out: &Path,
    inline_limit: u64,
) -> Result<(), GraphError> {
    let graph = proto.graph.mut_or_insert_default();
    let mut total = 0u64;
    // Constants (node attributes) too: a written model refers to no file but its own .data.
    for t in crate::model::stored_tensors_mut(graph) {
        if t.data_location.value() == DataLocation::EXTERNAL as i32 {
            let bytes = source.tensor_raw_bytes(t)?.map(|b| b.into_owned()).unwrap_or_default();
            t.external_data.clear();
            t.data_location = DataLocation::DEFAULT.into();
            t.raw_data = bytes;
        }
        total += t.raw_data.len() as u64;
    }
    if total > inline_limit {
        let file_name =
            format!("{}.data", out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let data_path = out.with_file_name(&file_name);
        let dir = data_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        safe_io::check_file_target(&data_path)?;
        let err = |source| GraphError::Write { path: data_path.clone(), source };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        let mut offset = 0u64;
        for t in graph.initializer.iter_mut().filter(|t| t.raw_data.len() >= EXTERNAL_MIN) {
            let bytes = std::mem::take(&mut t.raw_data);
            tmp.write_all(&bytes).map_err(err)?;
            for (k, v) in
                [("location", file_name.clone()), ("offset", offset.to_string()), ("length", bytes.len().to_string())]
            {
                let mut e = StringStringEntryProto::new();
                e.key = k.into();
                e.value = v;
                t.external_data.push(e);
            }
            t.data_location = DataLocation::EXTERNAL.into();
            offset += bytes.len() as u64;
        }
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&data_path).map_err(|e| err(e.error))?;
    }
    let bytes = proto.write_to_bytes().map_err(GraphError::Encode)?;
    Ok(safe_io::write_atomic(out, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{tensor_proto::DataType, TensorProto};

    #[test]
    fn large_models_go_to_an_external_file_that_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut proto = ModelProto::new();
        let g = proto.graph.mut_or_insert_default();
        for (name, n) in [("big", 600usize), ("small", 3)] {
            let mut t = TensorProto::new();
            t.name = name.into();
            t.data_type = DataType::FLOAT as i32;
            t.dims = vec![n as i64];
            t.raw_data = (0..n).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
            g.initializer.push(t);
        }
        let src = dir.path().join("src.onnx");
        std::fs::write(&src, proto.write_to_bytes().unwrap()).unwrap();
        let source = Model::load(&src).unwrap();
        let out = dir.path().join("out.onnx");
        save_model_with_limit(&source, source.proto.clone(), &out, 0).unwrap();
        assert!(dir.path().join("out.onnx.data").is_file());
        let back = Model::load(&out).unwrap();
        assert!(back.has_external_data);
        let big = back.proto.graph.initializer.iter().find(|t| t.name == "big").unwrap();
        assert_eq!(back.tensor_f32(big).unwrap()[599], 299.5);
        // Below the threshold everything is inline.
        let small = back.proto.graph.initializer.iter().find(|t| t.name == "small").unwrap();
        assert_eq!(small.data_location.value(), DataLocation::DEFAULT as i32);
        assert_eq!(back.tensor_f32(small).unwrap(), vec![0.0, 0.5, 1.0]);
        // And a self-contained copy of the external one reads the same values.
        let inline = dir.path().join("inline.onnx");
        save_model(&back, back.proto.clone(), &inline).unwrap();
        let again = Model::load(&inline).unwrap();
        assert!(!again.has_external_data);
        let big = again.proto.graph.initializer.iter().find(|t| t.name == "big").unwrap();
        assert_eq!(again.tensor_f32(big).unwrap()[599], 299.5);
    }
}
