//! Turns calibration histograms into INT8 scales, precision decisions and deployment artifacts.
pub mod scales;
