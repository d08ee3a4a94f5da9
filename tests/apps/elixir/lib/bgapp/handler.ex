defmodule Bgapp.Handler do
  @moduledoc "An :httpd callback module: GET /health and GET /."
  require Record
  Record.defrecord(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  def unquote(:do)(data) do
    path = mod(data, :request_uri)

    {code, body} =
      case path do
        '/health' -> {200, "ok\n"}
        _ -> {200, "hello from #{Bgapp.version()} (#{Bgapp.colour()}) node #{node()}\n"}
      end

    headers = [code: code, content_type: 'text/plain', content_length: '#{byte_size(body)}']
    {:proceed, [response: {:response, headers, String.to_charlist(body)}]}
  end
end
