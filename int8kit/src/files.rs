//! Every command's inputs and outputs, declared in this one place ([`Command::run_files`]) and checked by
//! [`check`] before any work: an output may not be, hold or sit inside an input or another output. A test
//! sets every path flag of every command and fails when one is not declared here.

use std::path::{Path, PathBuf};

use safe_io::{Kind, RunFiles};

use crate::args::{CalibrationSource, RecipeArgs, SchemeArgs};
use crate::commands::sensitivity::SensitivityArgs;
use crate::Command;

fn recipe(files: &mut RunFiles, args: &RecipeArgs) {
    files.add_some("--recipe", args.recipe.as_deref(), Kind::File);
}

fn source(files: &mut RunFiles, args: &CalibrationSource) {
    files.add("--model", &args.model, Kind::Model).add("--images", &args.images, Kind::Samples);
    recipe(files, &args.recipe);
}

fn scheme(files: &mut RunFiles, args: &SchemeArgs) {
    files.add_some("--sensitivity", args.sensitivity.as_deref(), Kind::File).add_some(
        "--precision",
        args.precision.as_deref(),
        Kind::File,
    );
}

fn sensitivity(files: &mut RunFiles, a: &SensitivityArgs) {
    files
        .add("--model", &a.model, Kind::Model)
        .add("--hist", &a.hist, Kind::File)
        .add("--val", &a.val, Kind::Samples)
        .add_some("--zero-shot", a.zero_shot.as_deref(), Kind::File)
        .add_some("--classes", a.classes.as_deref(), Kind::File)
        .add("--out", &a.out, Kind::OutFolder);
    scheme(files, &a.scheme);
    recipe(files, &a.recipe);
}

impl Command {
    /// Every file and folder this command line reads or writes.
    pub fn run_files(&self) -> RunFiles {
        let mut files = RunFiles::new();
        let f = &mut files;
        match self {
            Command::Quantize(a) => {
                source(f, &a.source);
                f.add_some("--check", a.check.check.as_deref(), Kind::Samples);
                scheme(f, &a.scheme);
                f.add_some("--save-hist", a.save_hist.as_deref(), Kind::OutFile).add("--out", &a.out, Kind::OutFolder);
            }
            Command::Calibrate(a) => {
                source(f, &a.source);
                f.add("--out", &a.out, Kind::OutFile);
            }
            Command::Analyze(a) => {
                f.add("--model", &a.model, Kind::Model).add("--hist", &a.hist, Kind::File).add_some(
                    "--images",
                    a.images.as_deref(),
                    Kind::Samples,
                );
                f.add_some("--check", a.check.check.as_deref(), Kind::Samples);
                scheme(f, &a.scheme);
                f.add("--out", &a.out, Kind::OutFolder);
            }
            Command::Sensitivity(a) => sensitivity(f, a),
            Command::Autoprecision(a) => sensitivity(f, &a.common),
            Command::Validate(a) => {
                f.add("--model", &a.model, Kind::Model)
                    .add_some("--calib", a.calib.as_deref(), Kind::Samples)
                    .add_some("--hist", a.hist.as_deref(), Kind::File)
                    .add_some("--check", a.check.check.as_deref(), Kind::Samples)
                    .add("--val", &a.val, Kind::Samples)
                    .add_some("--zero-shot", a.zero_shot.as_deref(), Kind::File)
                    .add_some("--baseline", a.baseline.as_deref(), Kind::File)
                    .add_some("--classes", a.classes.as_deref(), Kind::File)
                    .add("--out", &a.out, Kind::OutFolder)
                    .add_some("--partial-out", a.partial_out.as_deref(), Kind::OutFile);
                scheme(f, &a.scheme);
                recipe(f, &a.recipe);
            }
            Command::Merge(a) => {
                for part in &a.parts {
                    f.add("PART", part, Kind::File);
                }
                // Validation parts merge into a report folder, .hist shards into a file.
                let folder = a.parts.first().is_some_and(|p| evaluate::shards::is_part(p));
                f.add("--out", &a.out, if folder { Kind::OutFolder } else { Kind::OutFile });
            }
            Command::Lint(a) => {
                f.add("MODEL.onnx", &a.model, Kind::Model);
            }
            Command::Setup(_) => {}
        }
        files
    }
}

/// The files a model is read from (the model and its external data), for [`RunFiles::check`]: listed from the
/// protobuf, without reading or hashing the data.
fn model_files(model: &Path) -> Result<Vec<PathBuf>, String> {
    graph::Model::files_of(model).map_err(|e| e.to_string())
}

/// Refuses the command line before any work when an output would be, hold or sit inside an input or another
/// output, or is a folder int8kit cannot prove its own.
pub fn check(command: &Command) -> Result<(), safe_io::WriteError> {
    command.run_files().check(&model_files)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::Cli;

    /// For each subcommand, command lines that parse; every path flag is added to one of them in turn.
    fn base_lines(name: &str) -> Vec<Vec<&'static str>> {
        let calib = ["--model", "/t/model", "--images", "/t/images", "--recipe", "/t/recipe"];
        match name {
            "quantize" => vec![[&calib[..], &["--out", "/t/out"]].concat()],
            "calibrate" => vec![[&calib[..], &["--out", "/t/out"]].concat()],
            "analyze" => vec![vec!["--model", "/t/model", "--hist", "/t/hist", "--out", "/t/out"]],
            "sensitivity" | "autoprecision" => {
                vec![vec!["--model", "/t/model", "--hist", "/t/hist", "--val", "/t/val", "--out", "/t/out"]]
            }
            "validate" => vec![
                vec!["--model", "/t/model", "--calib", "/t/calib", "--val", "/t/val", "--out", "/t/out"],
                vec!["--model", "/t/model", "--hist", "/t/hist", "--val", "/t/val", "--out", "/t/out"],
                vec![
                    "--model", "/t/model", "--calib", "/t/calib", "--val", "/t/val", "--out", "/t/out", "--shard",
                    "1/2",
                ],
            ],
            "merge" => vec![vec!["/t/part", "--out", "/t/out"]],
            "lint" => vec![vec![]],
            _ => vec![vec![]],
        }
    }

    #[test]
    fn every_path_flag_of_every_command_is_declared() {
        let cli = Cli::command();
        let path_type = clap::builder::ValueParser::path_buf().type_id();
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            let name = sub.get_name().to_string();
            for arg in sub.get_arguments() {
                if arg.get_value_parser().type_id() != path_type {
                    continue;
                }
                let planted = format!("/planted/{name}/{}", arg.get_id());
                let flag = arg.get_long().map(|l| format!("--{l}"));
                let parsed = base_lines(&name).into_iter().find_map(|base| {
                    let mut line: Vec<String> = vec!["int8kit".into(), name.clone()];
                    let mut base: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                    match &flag {
                        Some(flag) => {
                            // Replace the flag's value when the base line has it, else add it.
                            if let Some(i) = base.iter().position(|a| a == flag) {
                                base[i + 1] = planted.clone();
                            } else {
                                base.extend([flag.clone(), planted.clone()]);
                            }
                        }
                        None => base.insert(0, planted.clone()),
                    }
                    line.extend(base);
                    <Cli as clap::Parser>::try_parse_from(&line).ok()
                });
                let cli = parsed.unwrap_or_else(|| panic!("{name}: no base line admits {}", arg.get_id()));
                let declared = cli.command.run_files();
                assert!(
                    declared.declared().iter().any(|d| d.path == std::path::Path::new(&planted)),
                    "int8kit {name}: the path flag `{}` is not declared in files.rs, so its outputs are not \
                     checked against it",
                    arg.get_id()
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} path flags found");
    }
}
