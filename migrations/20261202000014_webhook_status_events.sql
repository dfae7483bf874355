-- The dashboard hears when a connection's provider webhooks are subscribed or fail, as it does
-- for its other status columns (not each callback: that is what the live page's reload reads).
drop trigger connections_admin_event on connections;
create trigger connections_admin_event
    after insert or update of status, name, sync_paused, sync_schedule, reconcile_schedule, last_error,
                              webhook_status, webhook_error on connections
    for each row execute function notify_admin_connection();
