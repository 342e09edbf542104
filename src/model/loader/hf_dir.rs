//! (in progress)
use crate::error::{Error, Result};
use crate::model::LoadedModel;
use std::path::Path;

pub fn load(path: &Path) -> Result<LoadedModel> {
    Err(Error::invalid_model(path, "loader not built yet"))
}
