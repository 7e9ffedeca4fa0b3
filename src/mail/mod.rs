//! Sending email (placeholder: being written).
