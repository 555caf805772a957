//! The borgmatic-style backup runner as a library (moving out of `rempart-backup`, issue 15).
