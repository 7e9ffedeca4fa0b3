//! Rendering incident notices (placeholder: being written).
