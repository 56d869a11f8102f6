//! `tokengate webhooks`: add, list, remove, and the delivery log.

use std::process::ExitCode;

use serde_json::json;
use tokengate::Lifecycle;
use tokengate::deployment::AnyStore;
use tokengate::store::{Delivery, EventType, TokenAdmin, Webhook};

use super::{Result, json_line, shown, when};
use crate::args::WebhookCommand;

pub(super) async fn run(
    lifecycle: &Lifecycle<AnyStore>,
    command: &WebhookCommand,
) -> Result<ExitCode> {
    let store = lifecycle.store();
    match command {
        WebhookCommand::Add {
            url,
            events,
            secret_file,
        } => {
            let types = event_types(events)?;
            let secret = match secret_file {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
                ),
                None => None,
            };
            let generated = secret.is_none();
            let hook = Webhook::new(url, types, secret).map_err(|e| e.to_string())?;
            store.add_webhook(&hook).await.map_err(|e| e.to_string())?;
            println!(
                "added {} for {}",
                hook.id,
                hook.events
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            if generated {
                println!("signing secret (shown once): {}", hook.secret);
            }
        }
        WebhookCommand::List { json } => {
            let hooks = store.webhooks().await.map_err(|e| e.to_string())?;
            for hook in &hooks {
                if *json {
                    println!(
                        "{}",
                        json_line(&json!({
                            "id": hook.id,
                            "url": hook.url,
                            "events": hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
                            "created_at": when(hook.created_at),
                        }))
                    );
                } else {
                    let events: Vec<&str> = hook.events.iter().map(|e| e.as_str()).collect();
                    println!("{}  {}  {}", hook.id, shown(&hook.url), events.join(","));
                }
            }
            if hooks.is_empty() && !*json {
                eprintln!("no webhooks");
            }
        }
        WebhookCommand::Remove { id } => {
            if !store.remove_webhook(id).await.map_err(|e| e.to_string())? {
                return Err(format!("no webhook with id {}", shown(id)));
            }
            println!("removed {id}");
        }
        WebhookCommand::Log {
            failed,
            limit,
            json,
        } => {
            let log = store
                .deliveries(*failed, *limit)
                .await
                .map_err(|e| e.to_string())?;
            if !*json {
                println!(
                    "{:<20}  {:<19}  {:<16}  {:<9}  {:>8}  {:>6}  ERROR",
                    "EVENT", "WEBHOOK", "TYPE", "STATE", "ATTEMPTS", "STATUS"
                );
            }
            for delivery in &log {
                print_delivery(delivery, *json);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_delivery(d: &Delivery, json: bool) {
    if json {
        println!(
            "{}",
            json_line(&json!({
                "event_id": d.event_id,
                "webhook_id": d.webhook_id,
                "type": d.kind.as_str(),
                "state": d.state.as_str(),
                "attempts": d.attempts,
                "last_status": d.last_status,
                "last_error": d.last_error,
                "created": when(d.created),
                "next_at": when(d.next_at),
            }))
        );
        return;
    }
    println!(
        "{:<20}  {:<19}  {:<16}  {:<9}  {:>8}  {:>6}  {}",
        d.event_id,
        d.webhook_id,
        d.kind.as_str(),
        d.state.as_str(),
        d.attempts,
        d.last_status
            .map_or_else(|| "-".to_owned(), |s| s.to_string()),
        d.last_error.as_deref().map_or_else(|| "-".into(), shown),
    );
}

/// `issued,revoked` or `all`, each with or without `token.`.
fn event_types(names: &[String]) -> Result<Vec<EventType>> {
    if names.iter().any(|n| n.trim() == "all") {
        return Ok(EventType::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| n.trim().parse::<EventType>().map_err(|e| e.to_string()))
        .collect()
}
