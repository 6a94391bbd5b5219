//! `fleet build`: build context (`.dockerignore`), content tag, registry check, build, push.
pub mod ignore;
