//! After a host's rollout: keep the last few versions' images of each app for rollback, remove
//! older ones.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, RemoveImageOptions};

use super::deploy::{Ctx, Host};

/// Remove fleet-built images of this host's apps beyond the newest `keep_images` (never one a
/// container uses). Returns how many were removed.
pub(super) async fn prune_images(ctx: &Ctx<'_>, h: &Host<'_>) -> usize {
    let keep = ctx.opts.keep_images.max(1);
    let used: std::collections::HashSet<String> = h
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.image_id)
        .collect();
    let mut removed = 0;
    for a in ctx.desired.apps.iter().filter(|a| a.build.is_some()) {
        let filters: HashMap<String, Vec<String>> =
            [("reference".to_string(), vec![a.image.clone()])].into();
        let Ok(mut images) = h
            .docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        else {
            continue;
        };
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        for img in images.into_iter().skip(keep) {
            if used.contains(&img.id) {
                continue;
            }
            let opts = RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            for tag in &img.repo_tags {
                if h.docker
                    .remove_image(tag, Some(opts.clone()), None)
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    removed
}
