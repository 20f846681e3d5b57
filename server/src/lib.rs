pub use trio_engine;
