defmodule Bgapp.Application do
  @moduledoc "Starts :inets httpd on 127.0.0.1:$PORT, answering / and /health."
  use Application
  require Logger

  @impl true
  def start(_type, _args) do
    port = String.to_integer(System.get_env("PORT") || "4000")

    {:ok, _httpd} =
      :inets.start(:httpd,
        port: port,
        bind_address: {127, 0, 0, 1},
        server_name: 'bgapp',
        server_root: String.to_charlist(System.tmp_dir!()),
        document_root: String.to_charlist(System.tmp_dir!()),
        modules: [Bgapp.Handler]
      )

    Logger.info("bgapp #{Bgapp.version()} (#{Bgapp.colour()}) listening on 127.0.0.1:#{port}")
    Supervisor.start_link([], strategy: :one_for_one, name: Bgapp.Supervisor)
  end
end
