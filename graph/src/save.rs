//! Writing an edited model so that it loads from wherever it is written.

use std::io::Write;
use std::path::Path;

use onnx_protobuf::{tensor_proto::DataLocation, Message, ModelProto, StringStringEntryProto};

use crate::{write_atomic, GraphError, Model};

/// Above this many bytes of initializer data, protobuf's 2 GiB message limit is near: tensors go to an
/// external data file instead.
const INLINE_LIMIT: u64 = 1 << 30;
/// Tensors smaller than this stay inline even when the rest goes external.
const EXTERNAL_MIN: usize = 1024;

/// Writes `proto` (an edit of `source`'s graph) to `out`. Initializers that `source` kept in external files
/// are read from there; everything is inlined when it fits, else large tensors go to `<out>.data` beside it.
/// Both files are written through temporary files and renames.
pub fn save_model(source: &Model, mut proto: ModelProto, out: &Path) -> Result<(), GraphError> {
    let graph = proto.graph.mut_or_insert_default();
    let mut total = 0u64;
    for t in graph.initializer.iter_mut() {
        if t.data_location.value() == DataLocation::EXTERNAL as i32 {
            let bytes = source.tensor_raw_bytes(t)?.map(|b| b.into_owned()).unwrap_or_default();
            t.external_data.clear();
            t.data_location = DataLocation::DEFAULT.into();
            t.raw_data = bytes;
        }
        total += t.raw_data.len() as u64;
    }
    if total > INLINE_LIMIT {
        let file_name =
            format!("{}.data", out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let data_path = out.with_file_name(&file_name);
        let dir = data_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
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
    let bytes = proto.write_to_bytes().map_err(|e| GraphError::Encode(e.to_string()))?;
    write_atomic(out, &bytes)
}
