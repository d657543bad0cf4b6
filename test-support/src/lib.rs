//! The bundled fixtures for tests, read from `fixtures/models/models.json` so that no test hard-codes a model
//! list or a path: the workspace root, the models and what each one is, the recipe and the image folders.
//! Dev-only: no library or binary depends on it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datasets::{Dataset, Recipe};

pub mod conv_models;
pub mod dynamic_models;
pub mod text_tower;

/// Every entry below `dir`, symlinks not followed: its path relative to `dir` -> the bytes of a file, the
/// target of a symlink (prefixed `-> `), or `None` for a folder. Tests compare two of these to prove that
/// nothing changed.
pub fn tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).expect("below dir").to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let value = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                Some(format!("-> {target}").into_bytes())
            } else if meta.is_dir() {
                stack.push(path);
                None
            } else {
                Some(std::fs::read(entry.path()).unwrap_or_default())
            };
            out.insert(rel, value);
        }
    }
    out
}

/// The workspace root (this crate lives one level below it).
pub fn root() -> PathBuf {
    // A test binary carried to a machine without the build's checkout (a GPU machine without Rust) is told
    // where the checkout is.
    if let Some(root) = std::env::var_os("INT8KIT_ROOT") {
        return PathBuf::from(root);
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

/// One model entry of models.json.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelEntry {
    /// What the model is.
    pub kind: String,
    /// Input name and shape, as written in models.json.
    pub input: String,
    /// Output name and shape.
    pub output: String,
    /// How the output is classified, for embedding models (zero-shot against the prototypes).
    pub zero_shot: Option<String>,
    /// FP32 Top-1 on the validation folder, from the fixture's own ONNX Runtime run.
    pub fp32_top1_val_onnxruntime: f64,
}

#[derive(serde::Deserialize)]
struct Catalogue {
    models: BTreeMap<String, ModelEntry>,
}

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let path = root().join("fixtures/models/models.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

/// The fixture models by file name, in name order.
pub fn models() -> &'static BTreeMap<String, ModelEntry> {
    &catalogue().models
}

/// A fixture model's entry; panics naming the file when models.json does not list it.
pub fn entry(name: &str) -> &'static ModelEntry {
    models().get(name).unwrap_or_else(|| panic!("fixtures/models/models.json does not list {name}"))
}

/// The path of a fixture model listed in models.json.
pub fn model(name: &str) -> PathBuf {
    entry(name);
    root().join("fixtures/models").join(name)
}

/// The fixture ResNet, in memory, with one node `op` more, reading its logits and writing `output`, which is
/// listed after the logits as a graph output of ONNX element type `elem` (a classifier's label, a second head).
pub fn resnet_with_head(op: &str, output: &str, elem: i32) -> graph::Model {
    let mut m = graph::Model::load(&model("fmnist_resnet_opset13.onnx")).unwrap();
    let g = m.proto.graph.mut_or_insert_default();
    let mut head = graph::proto::NodeProto::new();
    head.op_type = op.into();
    head.name = format!("{output}_{op}");
    head.input = vec![g.output[0].name.clone()];
    head.output = vec![output.into()];
    g.node.push(head);
    let mut out = graph::proto::ValueInfoProto::new();
    out.name = output.into();
    out.type_.mut_or_insert_default().mut_tensor_type().elem_type = elem;
    g.output.push(out);
    m
}

/// The zero-shot class prototypes that go with the embedding models.
pub fn prototypes() -> PathBuf {
    root().join("fixtures/models/fmnist_clip_text_prototypes.npy")
}

/// The fixtures' preprocessing recipe file.
pub fn recipe_path() -> PathBuf {
    root().join("fixtures/fmnist.toml")
}

/// The fixtures' preprocessing recipe.
pub fn recipe() -> Recipe {
    Recipe::load(&recipe_path()).expect("fixtures/fmnist.toml loads")
}

/// The fixtures' images fed through their recipe.
pub fn feed() -> datasets::Feed {
    datasets::Feed::Images(recipe())
}

/// The flat calibration folder.
pub fn calib_dir() -> PathBuf {
    root().join("fixtures/fmnist/calib")
}

/// The labelled validation folder.
pub fn val_dir() -> PathBuf {
    root().join("fixtures/fmnist/val")
}

/// A seeded subset of the labelled validation images.
pub fn val_subset(images: usize, seed: u64) -> Dataset {
    Dataset::labelled(&val_dir(), None).expect("fixtures/fmnist/val lists").limit(images, seed)
}

/// A file of the golden-file folder `testdata/golden/` of the crate under test.
pub fn golden(crate_dir: &str, name: &str) -> PathBuf {
    Path::new(crate_dir).join("testdata/golden").join(name)
}

/// Compares `actual` with a golden file; with `INT8KIT_BLESS=1` in the environment, rewrites the file
/// instead (review the diff before committing it).
pub fn assert_golden(path: &Path, actual: &[u8]) {
    if std::env::var_os("INT8KIT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden files live in a folder")).expect("create testdata");
        std::fs::write(path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run the test with INT8KIT_BLESS=1 to create it)", path.display()));
    if expected != actual {
        panic!(
            "{} differs from the output: a versioned format changed. If the change is intended, bump the format's \
             version, document it in FORMATS.md and re-bless with INT8KIT_BLESS=1.\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(actual)
        );
    }
}
