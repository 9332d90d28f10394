//! What every Flight server of weir (instance, service host, control endpoint) writes the same
//! way: the associated stream types (`flight_stream_types!()`) and the Flight methods outside its
//! protocol (`flight_not_offered!(do_get, do_put)` inside an `impl FlightService for ...` block).
//! Those are answered with gRPC's standard status for a method a server does not offer, naming
//! the method and what the server does answer, so a client that calls the wrong one is told why.

/// Writes the named `FlightService` methods, each refusing the call with gRPC's "not offered by
/// this server" status (code 12) and a message naming the method. Used
/// inside a `#[tonic::async_trait] impl FlightService for X` block that declares the associated
/// stream types. The methods are written in the form `async_trait` expands to, since that
/// attribute runs before this macro does.
macro_rules! flight_not_offered {
    ($($method:ident),+ $(,)?) => {
        $( $crate::not_offered::flight_not_offered!(@one $method); )+
    };
    (@one handshake) => {
        $crate::not_offered::flight_not_offered!(@fn handshake,
            tonic::Streaming<arrow_flight::HandshakeRequest>, Self::HandshakeStream);
    };
    (@one list_flights) => {
        $crate::not_offered::flight_not_offered!(@fn list_flights,
            arrow_flight::Criteria, Self::ListFlightsStream);
    };
    (@one get_flight_info) => {
        $crate::not_offered::flight_not_offered!(@fn get_flight_info,
            arrow_flight::FlightDescriptor, arrow_flight::FlightInfo);
    };
    (@one poll_flight_info) => {
        $crate::not_offered::flight_not_offered!(@fn poll_flight_info,
            arrow_flight::FlightDescriptor, arrow_flight::PollInfo);
    };
    (@one get_schema) => {
        $crate::not_offered::flight_not_offered!(@fn get_schema,
            arrow_flight::FlightDescriptor, arrow_flight::SchemaResult);
    };
    (@one do_get) => {
        $crate::not_offered::flight_not_offered!(@fn do_get,
            arrow_flight::Ticket, Self::DoGetStream);
    };
    (@one do_put) => {
        $crate::not_offered::flight_not_offered!(@fn do_put,
            tonic::Streaming<arrow_flight::FlightData>, Self::DoPutStream);
    };
    (@one do_exchange) => {
        $crate::not_offered::flight_not_offered!(@fn do_exchange,
            tonic::Streaming<arrow_flight::FlightData>, Self::DoExchangeStream);
    };
    (@one do_action) => {
        $crate::not_offered::flight_not_offered!(@fn do_action,
            arrow_flight::Action, Self::DoActionStream);
    };
    (@one list_actions) => {
        $crate::not_offered::flight_not_offered!(@fn list_actions,
            arrow_flight::Empty, Self::ListActionsStream);
    };
    (@fn $method:ident, $req:ty, $resp:ty) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _: tonic::Request<$req>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = std::result::Result<tonic::Response<$resp>, tonic::Status>,
                    > + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async {
                Err(tonic::Status::unimplemented(concat!(
                    "this weir server does not offer ",
                    stringify!($method),
                    " (it speaks DoExchange with weir tensors, or DoAction for control)"
                )))
            })
        }
    };
}

/// Writes the associated stream types of a `FlightService` impl: every method answers with a
/// boxed stream of its message type ([`crate::flight::FlightStream`]).
macro_rules! flight_stream_types {
    () => {
        type HandshakeStream = $crate::flight::FlightStream<arrow_flight::HandshakeResponse>;
        type ListFlightsStream = $crate::flight::FlightStream<arrow_flight::FlightInfo>;
        type DoGetStream = $crate::flight::FlightStream<arrow_flight::FlightData>;
        type DoPutStream = $crate::flight::FlightStream<arrow_flight::PutResult>;
        type DoExchangeStream = $crate::flight::FlightStream<arrow_flight::FlightData>;
        type DoActionStream = $crate::flight::FlightStream<arrow_flight::Result>;
        type ListActionsStream = $crate::flight::FlightStream<arrow_flight::ActionType>;
    };
}

pub(crate) use flight_not_offered;
pub(crate) use flight_stream_types;
