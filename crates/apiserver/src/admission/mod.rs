//! Mutating admission of objects being created, after authorization and
//! before the registry decodes, defaults, validates and stores them (as
//! kube-apiserver runs its mutating admission plugins first). The checks that
//! depend on who writes (RBAC escalation, NodeRestriction) run later, on the
//! final object, through `WriteOptions::admit`.

pub mod service_account;
