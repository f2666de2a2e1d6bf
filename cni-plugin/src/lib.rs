pub mod agent_api;
