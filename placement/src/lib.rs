//! Where INT8 goes: which nodes run in INT8 (the defaults, overridden by a precision file) and which tensors
//! get a QuantizeLinear/DequantizeLinear pair in front of which node input, for a deployment target.
//!
//! TensorRT's Q/DQ rules live here once: [`plan`] follows them to place Q/DQ, and [`lint`] checks any Q/DQ
//! model against them. `quantizer` builds the Q/DQ model from a [`Plan`]; `calibrate --tensors quantizable`
//! collects exactly the tensors the default plans read ([`needed_by_defaults`]), so the two can never disagree.

#![forbid(unsafe_code)]

pub mod lint;
pub mod precision;
mod rules;

use std::path::PathBuf;

pub use precision::{
    decide, einsum_terms, has_attention, is_attention_op, is_einsum_product, AttentionPrecision, Decision,
    PrecisionFile, Selection, ATTENTION_OP, GEMM_OPS,
};
pub use rules::{
    constant_behind, depthwise_convs, input_independent, needed_by_defaults, plan, smoothable_gemms, weight_slot,
    DepthwiseConv, Plan, SmoothableGemm, Use,
};

/// Errors of placement; each names the file or node and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// A precision file could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Input(#[from] safe_io::ReadError),
    /// A precision file is malformed or names something the model does not have.
    #[error("precision file {path}: {message}")]
    Precision {
        /// The precision file (or where the lists came from).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A node cannot be placed (malformed).
    #[error("{path}: {message}")]
    Model {
        /// Where the lists came from.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The runtime the Q/DQ model is built for. Both keep every GEMM/Conv and attention MatMul in INT8; they
/// differ in the Q/DQ pairs that only pay off where the runtime fuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// TensorRT (explicit quantization): also the residual input of every Add that follows a quantized
    /// GEMM/Conv (so the Add fuses into it) and the inputs of pooling ops (so the producer writes INT8).
    #[default]
    TensorRt,
    /// ONNX Runtime: Q/DQ only on GEMM/Conv/MatMul inputs and on the identity branch of a residual Add after
    /// a Conv, which its QDQ fusions turn into integer kernels; extra pairs would only add conversions.
    OnnxRuntime,
}

impl Target {
    /// Attention MatMuls are INT8 for TensorRT (its fused INT8 attention; ModelOpt's default too) and float
    /// for ONNX Runtime, whose CPU INT8 MatMul with two activation inputs was slower than FP32 on the Xeon
    /// measured (BENCHMARKS.md).
    pub fn default_attention(self) -> AttentionPrecision {
        match self {
            Target::TensorRt => AttentionPrecision::Int8,
            Target::OnnxRuntime => AttentionPrecision::Float,
        }
    }

    /// The name used on the command line and in artifacts.
    pub fn name(self) -> &'static str {
        match self {
            Target::TensorRt => "tensorrt",
            Target::OnnxRuntime => "onnxruntime",
        }
    }
}

/// The float type of everything that is not INT8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    /// The graph's own type (no conversion).
    Fp32,
    /// IEEE half precision: TensorRT's usual type next to INT8.
    Fp16,
}

impl FloatType {
    /// The name used on the command line and in artifacts.
    pub fn name(self) -> &'static str {
        match self {
            FloatType::Fp32 => "fp32",
            FloatType::Fp16 => "fp16",
        }
    }

    /// The default for a target (see [`Target::default_attention`]): FP16 for TensorRT (strongly typed builds run every float layer in the
    /// graph's type, and FP16 is what TensorRT users deploy next to INT8), FP32 for ONNX Runtime (its CPU
    /// kernels are FP32; FP16 there only adds conversions).
    pub fn default_for(target: Target) -> FloatType {
        match target {
            Target::TensorRt => FloatType::Fp16,
            Target::OnnxRuntime => FloatType::Fp32,
        }
    }
}

/// How the artifact is built: where Q/DQ goes and what the float parts run in; a precision file's lists
/// override the placement node by node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementOptions {
    /// The runtime the model is built for.
    pub target: Target,
    /// Precision of MatMuls whose two inputs are both activations (attention Q*K^T and attn*V); `None`
    /// takes the precision file's `attention`, then the target's default.
    pub attention: Option<AttentionPrecision>,
    /// The float type of the parts that are not INT8.
    pub float_type: FloatType,
    /// The residual input of Adds after an INT8 GEMM/Conv: INT8 (the Add fuses into the GEMM) or float.
    pub residual: ResidualPrecision,
}

/// The residual stream's precision at Adds that follow an INT8 GEMM/Conv: `Int8` quantizes the Add's other
/// input so that TensorRT fuses the Add into the GEMM/Conv (ONNX Runtime: into its integer kernel after a
/// Conv), at the cost of rounding the residual stream there; `Float` leaves it float (the Add then runs as a
/// layer of its own). Which costs how much accuracy depends on the model (the `auto` search measures it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResidualPrecision {
    /// Quantized where it lets the Add fuse.
    #[default]
    Int8,
    /// Float.
    Float,
}

impl ResidualPrecision {
    /// `int8` or `float`.
    pub fn name(self) -> &'static str {
        match self {
            ResidualPrecision::Int8 => "int8",
            ResidualPrecision::Float => "float",
        }
    }
}

impl PlacementOptions {
    /// The target's defaults: its attention precision and float type.
    pub fn for_target(target: Target) -> PlacementOptions {
        PlacementOptions {
            target,
            attention: None,
            float_type: FloatType::default_for(target),
            residual: ResidualPrecision::Int8,
        }
    }
}

impl Default for PlacementOptions {
    fn default() -> PlacementOptions {
        PlacementOptions::for_target(Target::default())
    }
}
