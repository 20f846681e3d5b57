//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod catalogs;
pub mod clustered;
pub mod demo;
pub mod items;
