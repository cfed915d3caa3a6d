//! Every metric name shunt exposes, in one place (sozu's `metrics/names.rs`): the Prometheus
//! exposition, the alert rules and the dashboard in conf/ refer to these names, and a test
//! checks that every name those files use is exposed.

pub const BUILD_INFO: &str = "shunt_build_info";
pub const UPTIME: &str = "shunt_uptime_seconds";
pub const ACTIVE: &str = "shunt_active_connections";
pub const MAX_CONNECTIONS: &str = "shunt_max_connections";
pub const WORKERS: &str = "shunt_workers";
pub const WORKER_SESSIONS: &str = "shunt_worker_sessions";
pub const WORKER_TIMERS: &str = "shunt_worker_timers";
pub const WORKER_PIPES: &str = "shunt_worker_pipes";
pub const WORKER_DISPATCHED: &str = "shunt_worker_dispatched_total";
pub const RELOADS: &str = "shunt_reloads_total";
pub const LAST_RELOAD: &str = "shunt_reload_last_success_timestamp_seconds";
pub const CONFIG_GENERATION: &str = "shunt_config_generation";
pub const CONFIG_INFO: &str = "shunt_config_info";
pub const LOG_LINES_DROPPED: &str = "shunt_log_lines_dropped_total";
pub const OPEN_FDS: &str = "shunt_process_open_fds";
pub const RESIDENT_MEMORY: &str = "shunt_process_resident_memory_bytes";
pub const CPU_SECONDS: &str = "shunt_process_cpu_seconds_total";

pub const SERVICE_ACCEPTED: &str = "shunt_service_accepted_total";
pub const SERVICE_REFUSED: &str = "shunt_service_refused_total";
pub const PER_IP_SOURCES: &str = "shunt_per_ip_live_sources";
pub const PER_IP_CONNS: &str = "shunt_per_ip_live_connections";
pub const PER_IP_UNTRACKED: &str = "shunt_per_ip_untracked_total";
pub const SERVICE_LIMIT_PAUSES: &str = "shunt_service_limit_pauses_total";
pub const SERVICE_ACTIVE: &str = "shunt_service_active_connections";
pub const SERVICE_SESSION_DURATION: &str = "shunt_service_session_duration_seconds";

pub const SERVER_UP: &str = "shunt_server_up";
pub const SERVER_STATE: &str = "shunt_server_state";
pub const SERVER_WEIGHT: &str = "shunt_server_weight";
pub const SERVER_ACTIVE: &str = "shunt_server_active_connections";
pub const SERVER_CONNECTIONS: &str = "shunt_server_connections_total";
pub const SERVER_CONNECT_FAILURES: &str = "shunt_server_connect_failures_total";
/// Bytes from the server to clients (the "down" direction).
pub const SERVER_RECEIVED_BYTES: &str = "shunt_server_received_bytes_total";
/// Bytes from clients to the server (the "up" direction).
pub const SERVER_SENT_BYTES: &str = "shunt_server_sent_bytes_total";
pub const SERVER_CHECKS: &str = "shunt_server_checks_total";
pub const SERVER_CHECK_DURATION: &str = "shunt_server_check_duration_seconds";
pub const SERVER_CHECK_SUCCESS: &str = "shunt_server_check_success";
pub const SERVER_CONNECT_TIME: &str = "shunt_server_connect_seconds";

pub const TLS_HANDSHAKES: &str = "shunt_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "shunt_tls_handshake_failures_total";
pub const TLS_HANDSHAKE_TIME: &str = "shunt_tls_handshake_seconds";
pub const TLS_SESSIONS: &str = "shunt_tls_sessions_total";
pub const SERVICE_CLOSED_ON_DOWN: &str = "shunt_service_sessions_closed_on_down_total";
pub const PROXY_HEADERS: &str = "shunt_proxy_headers_total";
pub const PROXY_HEADER_FAILURES: &str = "shunt_proxy_header_failures_total";
