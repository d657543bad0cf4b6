//! How a dataset's samples become a model's inputs.

use std::path::Path;

use crate::{Dataset, DatasetError, Recipe};

/// How samples become model inputs: images through a preprocessing recipe, or `.npz` samples as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    /// Image files, preprocessed by the recipe into the one input it names.
    Images(Recipe),
    /// `.npz` samples: one array per model input, by the input's name, fed as stored.
    Tensors,
}

impl Feed {
    /// The feed a listed folder's samples need: `recipe` for images; a folder of `.npz` samples takes none
    /// (they are fed as stored), so a recipe given for one is refused rather than ignored.
    pub fn for_dataset(dataset: &Dataset, recipe: Option<Recipe>) -> Result<Feed, DatasetError> {
        Feed::choose(&dataset.root, dataset.holds_tensors(), recipe)
    }

    /// [`Feed::for_dataset`] for a folder not listed yet: its first sample tells the kind, so the command
    /// that lists it later does not list it twice.
    pub fn for_folder(dir: &Path, recipe: Option<Recipe>) -> Result<Feed, DatasetError> {
        Feed::choose(dir, Dataset::holds_tensors_below(dir)?, recipe)
    }

    fn choose(folder: &Path, tensors: bool, recipe: Option<Recipe>) -> Result<Feed, DatasetError> {
        match (tensors, recipe) {
            (false, Some(recipe)) => Ok(Feed::Images(recipe)),
            (true, None) => Ok(Feed::Tensors),
            (false, None) => Err(DatasetError::Recipe {
                origin: folder.display().to_string(),
                message: "the folder holds images, which need a preprocessing recipe (--recipe R.toml or --preset)"
                    .into(),
            }),
            (true, Some(_)) => Err(DatasetError::Recipe {
                origin: folder.display().to_string(),
                message: "the folder holds .npz tensor samples, which are fed as stored: a recipe applies to images \
                          only, so leave --recipe/--preset out"
                    .into(),
            }),
        }
    }

    /// The recipe, for images.
    pub fn recipe(&self) -> Option<&Recipe> {
        match self {
            Feed::Images(r) => Some(r),
            Feed::Tensors => None,
        }
    }

    /// The model input a recipe names (`None`: the model's only input, or tensors, which name their own).
    pub fn input_name(&self) -> Option<&str> {
        self.recipe().and_then(|r| r.name.as_deref())
    }

    /// Checks the recipe (tensors have nothing to check until they are read).
    pub fn validate(&self, origin: &str) -> Result<(), DatasetError> {
        match self {
            Feed::Images(r) => r.validate(origin),
            Feed::Tensors => Ok(()),
        }
    }

    /// What the samples are, for messages: "images" or ".npz samples".
    pub fn samples(&self) -> &'static str {
        match self {
            Feed::Images(_) => "images",
            Feed::Tensors => ".npz samples",
        }
    }
}
