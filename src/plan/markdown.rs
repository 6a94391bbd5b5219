//! A plan as Markdown, for a pull-request comment or `$GITHUB_STEP_SUMMARY`
//! (`fleet plan ENV --format markdown`).
//!
//! The counts come first (what a reviewer reads), then one collapsed section per host with its
//! changes in a ` ```diff ` block, so GitHub and GitLab colour `+` and `-` lines. Hosts with
//! nothing to do are listed in one line. Like the other forms, it never holds a KV value or a
//! secret: only names, images, versions and the reasons the diff gives.

use std::fmt::Write;

use super::render::{
    faults_headline, host_has_changes, instance_label, instance_what, service_label, service_what,
    summary_lines, up_to_date,
};
use super::{Action, KvAction, Plan, ServiceAction};

/// The symbol a diff block colours: `+` added, `-` removed, `!` changed in place.
fn diff_symbol(sym: &str) -> &'static str {
    match sym {
        "+" => "+",
        "-" => "-",
        _ => "!",
    }
}

/// Markdown cells cannot hold `|` or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let s = plan.summary();
    let _ = writeln!(
        out,
        "### fleet plan: `{}` / `{}`\n",
        plan.project, plan.environment
    );
    if !plan.faults.is_empty() {
        let _ = writeln!(out, "> [!CAUTION]\n> {}.\n", faults_headline(plan));
    }
    if s.changes() == 0 && plan.faults.is_empty() {
        let _ = writeln!(out, "**No changes.** {}", up_to_date(&s, plan.hosts.len()));
        return out;
    }
    for l in summary_lines(&s) {
        let _ = writeln!(out, "**{l}**  ");
    }
    let _ = writeln!(out);

    let quiet: Vec<String> = plan
        .hosts
        .iter()
        .filter(|h| h.observed && !host_has_changes(h))
        .map(|h| format!("`{}`", h.name))
        .collect();
    // Unread hosts are in the faults table below.
    for h in plan
        .hosts
        .iter()
        .filter(|h| h.observed && host_has_changes(h))
    {
        let n = h
            .instances
            .iter()
            .filter(|i| i.action != Action::Unchanged)
            .count()
            + h.services
                .iter()
                .filter(|v| v.action != ServiceAction::Unchanged)
                .count();
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code> ({}): {n} change{}</summary>\n\n```diff",
            h.name,
            h.address,
            if n == 1 { "" } else { "s" }
        );
        let lines = h
            .instances
            .iter()
            .filter(|i| i.action != Action::Unchanged)
            .map(|i| {
                (
                    i.action.symbol(),
                    instance_label(i),
                    instance_what(i),
                    &i.reasons,
                )
            })
            .chain(
                h.services
                    .iter()
                    .filter(|v| v.action != ServiceAction::Unchanged)
                    .map(|v| {
                        (
                            v.action.symbol(),
                            service_label(v),
                            service_what(v),
                            &v.reasons,
                        )
                    }),
            );
        for (sym, label, what, reasons) in lines {
            let _ = writeln!(out, "{} {label:<10} {what}", diff_symbol(sym));
            for r in reasons {
                let _ = writeln!(out, "#     {}: {}", r.field, r.detail);
            }
        }
        let _ = writeln!(out, "```\n\n</details>\n");
    }
    if !quiet.is_empty() {
        let _ = writeln!(out, "No changes on {}.\n", quiet.join(", "));
    }
    let kv: Vec<_> = plan
        .kv
        .iter()
        .filter(|k| k.action != KvAction::Unchanged)
        .collect();
    if !kv.is_empty() {
        let _ = writeln!(out, "| KV key | action | why |\n|---|---|---|");
        for k in kv {
            let word = if k.action == KvAction::Put {
                "put"
            } else {
                "delete"
            };
            let _ = writeln!(out, "| `{}` | {word} | {} |", cell(&k.key), cell(&k.reason));
        }
        let _ = writeln!(out);
    }
    if !plan.faults.is_empty() {
        let _ = writeln!(out, "| host | address | fault |\n|---|---|---|");
        for f in &plan.faults {
            let _ = writeln!(
                out,
                "| `{}` | {} | {}: {} |",
                cell(&f.host),
                cell(&f.address),
                cell(&f.kind),
                cell(&f.message)
            );
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::diff;
    use crate::plan::fixtures::*;

    #[test]
    fn busy_plan_snapshot() {
        insta::assert_snapshot!(markdown(&busy_plan()));
    }

    #[test]
    fn no_changes_is_one_line_after_the_heading() {
        let d = desired();
        let md = markdown(&diff(&d, &deployed(&d)));
        assert!(md.contains("**No changes.**"), "{md}");
        assert!(!md.contains("```"), "{md}");
    }

    #[test]
    fn every_change_line_starts_with_a_diff_symbol() {
        let md = markdown(&busy_plan());
        let mut in_block = false;
        let mut lines = 0;
        for l in md.lines() {
            match l {
                "```diff" => in_block = true,
                "```" => in_block = false,
                _ if in_block => {
                    lines += 1;
                    assert!(
                        l.starts_with(['+', '-', '!', '#']),
                        "a line in a diff block GitHub would not colour: {l:?}"
                    );
                }
                _ => {}
            }
        }
        assert!(lines > 3, "{md}");
    }

    #[test]
    fn no_secret_or_kv_value() {
        let md = markdown(&busy_plan());
        for v in NEVER_SHOWN {
            assert!(!md.contains(v), "{v} leaked:\n{md}");
        }
    }

    #[test]
    fn faults_are_a_table_and_a_caution() {
        let md = markdown(&busy_plan());
        assert!(md.contains("[!CAUTION]"), "{md}");
        assert!(md.contains("| `h2` | 10.200.2.2 | unreachable: "), "{md}");
    }
}
